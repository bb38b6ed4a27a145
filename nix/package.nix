# The ccfleet workspace as one package: `ccfleet-server`, `ccfleet-agent` and `ccfleet`.
# The `.proto` files are compiled by the pure-Rust `protox` crate (proto/build.rs), so
# the build needs no `protoc`.
{ lib, rustPlatform }:

let
  workspace = (lib.importTOML ../Cargo.toml).workspace.package;
in
rustPlatform.buildRustPackage {
  pname = "ccfleet";
  inherit (workspace) version;

  # Only what cargo reads, so editing nix/ or docs does not rebuild the package.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../proto
      ../server
      ../agent
      ../cli
      ../tests
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # Unit tests only: the end-to-end tests in tests/ need the Docker Engine, which the
  # build sandbox does not have (CI runs them).
  cargoTestFlags = [ "--workspace" "--lib" "--bins" ];

  meta = {
    description = "Fleet management for Co-op Cloud apps on NixOS hosts";
    homepage = "https://git.coopcloud.tech/ccfleet/ccfleet";
    license = lib.licenses.agpl3Plus;
    mainProgram = "ccfleet";
    platforms = lib.platforms.linux;
  };
}

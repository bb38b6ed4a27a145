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
  # `cleanSourceWith` (builtins.path) rather than `lib.fileset`, whose nixpkgs versions
  # need `builtins.readFileType` (Nix 2.14): this file then evaluates with every Nix,
  # Debian's nix-bin 2.8 of the tests included.
  src = lib.cleanSourceWith {
    name = "ccfleet-source";
    src = ../.;
    filter = path: type:
      let
        relative = lib.removePrefix (toString ../. + "/") (toString path);
        topLevel = builtins.head (lib.splitString "/" relative);
      in
      lib.elem relative [ "Cargo.toml" "Cargo.lock" ]
      || (lib.elem topLevel [ "proto" "server" "agent" "cli" "tests" ] && !(lib.hasSuffix "/target" relative))
      || lib.hasPrefix "contrib/prometheus" relative
      || relative == "contrib";
  };

  cargoLock.lockFile = ../Cargo.lock;

  # Unit tests only: the end-to-end tests in tests/ need the Docker Engine, which the
  # build sandbox does not have (CI runs them).
  cargoTestFlags = [ "--workspace" "--lib" "--bins" ];

  # The alerting rules, for `services.prometheus.ruleFiles` (README.md, "Notifications").
  postInstall = ''
    install -Dm444 contrib/prometheus/ccfleet.rules.yml $out/share/ccfleet/prometheus/ccfleet.rules.yml
  '';

  meta = {
    description = "Fleet management for Co-op Cloud apps on NixOS hosts";
    homepage = "https://git.coopcloud.tech/ccfleet/ccfleet";
    license = lib.licenses.agpl3Plus;
    mainProgram = "ccfleet";
    platforms = lib.platforms.linux;
  };
}

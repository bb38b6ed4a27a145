# configuration.nix of the fleet server (flake: `imports = [ ccfleet.nixosModules.server ];`).
# Copied into README.md; parsed by tests/tests/it/nix.rs like every .nix file.
{ ... }:

{
  services.ccfleet-server = {
    enable = true;
    listenAddress = "[::]";
    port = 7443;
    openFirewall = true;
    publicUrl = "https://fleet.example.org:7443";
    serverNames = [ "fleet.example.org" ];
  };
}

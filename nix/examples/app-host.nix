# configuration.nix of an app host (flake: `imports = [ ccfleet.nixosModules.default ];`).
# Copied into README.md; parsed by tests/tests/it/nix.rs like every .nix file.
{ ... }:

{
  services.coop-cloud = {
    enable = true;
    # Deployed first by the agent; every other app depends on it.
    traefik = {
      domain = "traefik.example.org";
      version = "3.0.0+v3.1.2";
      env.LETS_ENCRYPT_EMAIL = "ops@example.org";
    };
    ghost = {
      enable = true;
      domain = "blog.example.org";
      # Bump this and run `nixos-rebuild switch`: the agent reloads its config, and
      # cc-app-ghost.service reruns `ccfleet-agent apply blog.example.org --wait`, which
      # runs the health-gated upgrade (snapshot, deploy, health gate, rollback with
      # restore) and fails the switch if the new version rolled back.
      version = "1.3.0+6.42.0-alpine";
      secrets.db_password.file = "/run/secrets/ghost-db-password";
    };
    apps.wiki = {
      recipe = "hedgedoc";
      domain = "wiki.example.org";
      version = "2.1.0+1.10.0";
      healthPath = "/status";
      # cc-app-wiki-update.timer asks the running agent to move the app to the newest
      # release of its major, through the same health-gated upgrade.
      autoUpdate = true;
      updateSchedule = "Sun 04:00";
    };
  };

  services.ccfleet-agent = {
    serverUrl = "https://fleet.example.org:7443";
    # `ccfleet token create` on an admin machine; used once to enrol.
    joinTokenFile = "/run/secrets/ccfleet-join-token";
  };
}

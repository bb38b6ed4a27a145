# An example host: the fleet server, traefik and four apps (one through a recipe
# module, one with sops, one with auto-update, one without an HTTP probe).
# `secretDir` holds the secret files the rendered agent config points to.
{ secretDir }:

{ ... }:

{
  services.ccfleet-server = {
    enable = true;
    openFirewall = true;
    adminPort = 7444;
    metricsPort = 9464;
    auditRetentionDays = 365;
    notify = {
      webhooks = [ "text+https://ntfy.example.org/fleet" ];
      webhooksFile = "/run/secrets/ccfleet-webhooks";
      secretFile = "/run/secrets/ccfleet-webhook-secret";
    };
  };

  services.coop-cloud = {
    enable = true;

    traefik = {
      domain = "traefik.example.org";
      version = "3.0.0+v3.1.2";
      env.LETS_ENCRYPT_EMAIL = "ops@example.org";
    };

    ghost = {
      enable = true;
      domain = "blog.example.org";
      version = "1.3.0+6.42.0-alpine";
      secrets.db_password.file = "${secretDir}/ghost-db-password";
      dependsOn = [ "keycloak" ];
    };

    apps = {
      keycloak = {
        recipe = "keycloak";
        domain = "sso.example.org";
        version = "10.1.0+26.0.5";
        healthPath = "/realms/master";
        healthAcceptedStatuses = [ 200 302 ];
        secrets.admin_password.file = "${secretDir}/keycloak-admin";
      };
      wiki = {
        recipe = "hedgedoc";
        domain = "wiki.example.org";
        version = "2.1.0+1.10.0";
        healthPath = "/status";
        autoUpdate = true;
        updateSchedule = "Sun 04:00";
        deployTimeout = "20m";
      };
      voice = {
        recipe = "mumble";
        domain = "voice.example.org";
        version = "0.2.0+1.5.634";
        stateful = true;
      };
    };
  };

  services.ccfleet-agent = {
    serverUrl = "https://fleet.example.org:7443";
    joinTokenFile = "/run/secrets/ccfleet-join-token";
    hostId = "web-1";
    labels.site = "berlin";
  };
}

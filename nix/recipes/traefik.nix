# services.coop-cloud.traefik: the `traefik` recipe (health path and statefulness: ARCHITECTURE.md, "Recipes ccfleet ships modules for").
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = null;
  stateful = true;
  # Every other app depends on it: on wherever services.coop-cloud is.
  enabledWithBase = true;
  description = "the Traefik reverse proxy (deployed first by services.coop-cloud; its ACME state lives in a volume)";
}

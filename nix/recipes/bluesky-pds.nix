# services.coop-cloud.bluesky-pds: the `bluesky-pds` recipe (health path and statefulness: ARCHITECTURE.md, "Recipes ccfleet ships modules for").
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/xrpc/_health";
  stateful = true;
}

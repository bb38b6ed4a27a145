# services.coop-cloud.mattermost-lts: the `mattermost-lts` recipe (health path and statefulness: ARCHITECTURE.md, "Recipes ccfleet ships modules for").
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/api/v4/system/ping";
  stateful = true;
}

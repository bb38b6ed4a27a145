# services.coop-cloud.mattermost-lts: the `mattermost-lts` recipe (health path and statefulness from ABRA.md).
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/api/v4/system/ping";
  stateful = true;
}

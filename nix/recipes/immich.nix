# services.coop-cloud.immich: the `immich` recipe (health path and statefulness from ABRA.md).
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/api/server/ping";
  stateful = true;
}

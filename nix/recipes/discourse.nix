# services.coop-cloud.discourse: the `discourse` recipe (health path and statefulness from ABRA.md).
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/srv/status";
  stateful = true;
}

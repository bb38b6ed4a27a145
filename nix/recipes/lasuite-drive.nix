# services.coop-cloud.lasuite-drive: the `lasuite-drive` recipe (health path and statefulness from ABRA.md).
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/";
  stateful = true;
}

# services.coop-cloud.hedgedoc: the `hedgedoc` recipe (health path and statefulness from ABRA.md).
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/status";
  stateful = true;
}

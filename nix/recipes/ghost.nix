# services.coop-cloud.ghost: the `ghost` recipe (health path and statefulness from ABRA.md).
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/ghost/api/admin/site/";
  stateful = true;
}

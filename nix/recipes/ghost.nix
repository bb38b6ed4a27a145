# services.coop-cloud.ghost: the `ghost` recipe (health path and statefulness: ARCHITECTURE.md, "Recipes ccfleet ships modules for").
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/ghost/api/admin/site/";
  stateful = true;
}

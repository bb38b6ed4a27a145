# services.coop-cloud.cryptpad: the `cryptpad` recipe (health path and statefulness: ARCHITECTURE.md, "Recipes ccfleet ships modules for").
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/";
  stateful = true;
}

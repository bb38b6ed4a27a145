# services.coop-cloud.custom-html-tiny: the `custom-html-tiny` recipe (health path and statefulness: ARCHITECTURE.md, "Recipes ccfleet ships modules for").
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/";
  stateful = true;
  description = "a tiny static site (its content lives in a volume)";
}

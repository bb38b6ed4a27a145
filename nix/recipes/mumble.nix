# services.coop-cloud.mumble: the `mumble` recipe (health path and statefulness: ARCHITECTURE.md, "Recipes ccfleet ships modules for").
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = null;
  stateful = true;
  description = "the Mumble voice server (TCP/UDP 64738; no HTTP endpoint to probe)";
}

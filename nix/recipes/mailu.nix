# services.coop-cloud.mailu: the `mailu` recipe (health path and statefulness: ARCHITECTURE.md, "Recipes ccfleet ships modules for").
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/";
  stateful = true;
  description = "the Mailu mail server (SMTP and IMAP ports are published by the recipe, not probed)";
}

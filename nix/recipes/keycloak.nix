# services.coop-cloud.keycloak: the `keycloak` recipe (health path and statefulness from ABRA.md).
# Data for `lib.mkCcApp` (nix/lib/mkCcApp.nix); the recipe is the file name.
{
  healthPath = "/realms/master";
  stateful = true;
}

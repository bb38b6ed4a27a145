# services.coop-cloud.keycloak: the `keycloak` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "keycloak";
  healthPath = "/realms/master";
  stateful = true;
}

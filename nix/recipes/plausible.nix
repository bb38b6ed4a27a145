# services.coop-cloud.plausible: the `plausible` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "plausible";
  healthPath = "/api/health";
  stateful = true;
}

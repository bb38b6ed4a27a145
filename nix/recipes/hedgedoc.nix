# services.coop-cloud.hedgedoc: the `hedgedoc` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "hedgedoc";
  healthPath = "/status";
  stateful = true;
}

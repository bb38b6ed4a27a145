# services.coop-cloud.discourse: the `discourse` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "discourse";
  healthPath = "/srv/status";
  stateful = true;
}

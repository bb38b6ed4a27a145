# services.coop-cloud.lasuite-meet: the `lasuite-meet` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "lasuite-meet";
  healthPath = "/";
  stateful = true;
}

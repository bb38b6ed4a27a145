# services.coop-cloud.lasuite-drive: the `lasuite-drive` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "lasuite-drive";
  healthPath = "/";
  stateful = true;
}

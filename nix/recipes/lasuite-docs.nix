# services.coop-cloud.lasuite-docs: the `lasuite-docs` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "lasuite-docs";
  healthPath = "/";
  stateful = true;
}

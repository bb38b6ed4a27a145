# services.coop-cloud.cryptpad: the `cryptpad` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "cryptpad";
  healthPath = "/";
  stateful = true;
}

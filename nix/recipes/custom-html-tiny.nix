# services.coop-cloud.custom-html-tiny: the `custom-html-tiny` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "custom-html-tiny";
  healthPath = "/";
  stateful = true;
  description = "a tiny static site (its content lives in a volume)";
}

# services.coop-cloud.custom-html: the `custom-html` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "custom-html";
  healthPath = "/";
  stateful = true;
  description = "a static site (its content lives in a volume)";
}

# services.coop-cloud.mailu: the `mailu` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "mailu";
  healthPath = "/";
  stateful = true;
  description = "the Mailu mail server (SMTP and IMAP ports are published by the recipe, not probed)";
}

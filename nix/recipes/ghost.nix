# services.coop-cloud.ghost: the `ghost` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "ghost";
  healthPath = "/ghost/api/admin/site/";
  stateful = true;
}

# services.coop-cloud.n8n: the `n8n` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "n8n";
  healthPath = "/healthz";
  stateful = true;
}

# services.coop-cloud.matrix-synapse: the `matrix-synapse` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "matrix-synapse";
  healthPath = "/health";
  stateful = true;
}

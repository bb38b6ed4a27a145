# services.coop-cloud.immich: the `immich` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "immich";
  healthPath = "/api/server/ping";
  stateful = true;
}

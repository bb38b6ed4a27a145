# services.coop-cloud.bluesky-pds: the `bluesky-pds` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "bluesky-pds";
  healthPath = "/xrpc/_health";
  stateful = true;
}

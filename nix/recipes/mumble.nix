# services.coop-cloud.mumble: the `mumble` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "mumble";
  healthPath = null;
  stateful = true;
  description = "the Mumble voice server (TCP/UDP 64738; no HTTP endpoint to probe)";
}

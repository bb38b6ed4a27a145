# services.coop-cloud.mattermost-lts: the `mattermost-lts` recipe (health path and statefulness from ABRA.md).
{ mkCcApp }:

mkCcApp {
  recipe = "mattermost-lts";
  healthPath = "/api/v4/system/ping";
  stateful = true;
}

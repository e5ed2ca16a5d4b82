// The guard's budget alert: an action group whose webhook calls the app's budget-alert route
// (POST /api/guard/budget-alert) in Azure Monitor's common alert schema, for the budget in main.bicep.

param name string
param functionAppName string
param tags object = {}

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: name
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'ftguard'
    enabled: true
    webhookReceivers: [
      {
        name: 'ftcancel-budget-alert'
        // The route takes a function key: the host's default key, read at deployment through ARM
        // (POST .../sites/<app>/host/default/listKeys). The host must be running to answer it; see
        // README "Guardrails" for the first deployment and for wiring a budget by hand.
        serviceUri: 'https://${site.properties.defaultHostName}/api/guard/budget-alert?code=${listKeys('${site.id}/host/default', '2024-04-01').functionKeys.default}'
        useCommonAlertSchema: true
        useAadAuth: false
      }
    ]
  }
}

output id string = actionGroup.id

// `azd up` entry point: one resource group with a Flex Consumption function app that cancels
// Azure OpenAI fine-tuning jobs on a default resource and any listed in azureOpenAiResources, its
// storage and queues, a Key Vault for the api-keys (only when a resource uses one), monitoring, a
// user-assigned identity and least-privilege role assignments.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; also the seed of every resource name.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer Flex Consumption (az functionapp list-flexconsumption-locations).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the person deploying (azd sets AZURE_PRINCIPAL_ID); they may set the api-key, enqueue and read results. Empty: no user roles.')
param principalId string = ''

@description('Resource group name; default rg-<environmentName>.')
param resourceGroupName string = ''

@description('Azure OpenAI endpoint, https://<resource>.openai.azure.com. Empty: derived from azureOpenAiResourceId.')
param azureOpenAiEndpoint string = ''

@description('Resource id of an existing Azure OpenAI account; the deployment derives the endpoint and copies its key1 into Key Vault (api-key) or gives the app\'s identity its role on it (entra).')
param azureOpenAiResourceId string = ''

// The code's AZURE_OPENAI_AUTH (CONTRACT section 8), passed through as that app setting.
@allowed([
  'api-key'
  'entra'
])
@description('How the app signs its calls to Azure OpenAI: api-key (the key from Key Vault) or entra (a token of its managed identity; no Key Vault is created).')
param azureOpenAiAuth string = 'api-key'

@secure()
@description('The api-key itself, written into Key Vault when no azureOpenAiResourceId is given (api-key mode). Empty: set the secret yourself.')
param azureOpenAiApiKey string = ''

@description('Upstream api-version the app sends.')
param azureOpenAiApiVersion string = '2024-10-21'

@description('Name of the Key Vault secret holding the api-key.')
param azureOpenAiKeySecretName string = 'azure-openai-api-key'

// The code's AZURE_OPENAI_RESOURCES (CONTRACT section 8), built from this list. Bicep cannot
// decorate array items without a user-defined type, which pycep-parser (checkov's parser) cannot
// read with decorators, so the items are checked below and refused through a guard parameter.
@description('More Azure OpenAI resources the app may cancel jobs on, beside the default one: a JSON array of {"name": "<1 to 40 of a-z, 0-9, ->", "resourceId": "/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.CognitiveServices/accounts/<name>" or "endpoint": "https://<resource>.openai.azure.com/", "auth": "api-key" or "entra", "apiVersion" (optional, default azureOpenAiApiVersion)}. With resourceId, api-key copies key1 into Key Vault as azure-openai-api-key-<name> and entra gives the app\'s identity its role on the account; with endpoint, api-key needs that secret set by hand. The name default is the default resource\'s.')
param azureOpenAiResources array = []

@description('Key Vault purge protection (irreversible). Turn off only for throwaway environments.')
param keyVaultEnablePurgeProtection bool = true

@allowed([
  'Enabled'
  'Disabled'
])
@description('Key Vault public network access. Disabled needs a private endpoint and VNet integration, which this template does not create.')
param keyVaultPublicNetworkAccess string = 'Enabled'

// The range Flex Consumption accepts (Flex Consumption plan docs, "Considerations: Scale"): 40 to 1000.
@minValue(40)
@maxValue(1000)
@description('Most instances the app scales out to (Flex Consumption: 40 to 1000).')
param maximumInstanceCount int = 100

@description('The guard\'s policy, GUARD_POLICY: a JSON object (max_age_minutes, allowed_models, exempt_job_ids, exempt_suffixes, resources, dry_run, on_budget_alert; README "Guardrails"). Empty: no policy, the sweep lists nothing and budget alerts cancel nothing.')
param guardPolicy string = ''

// An optional budget whose alerts pull the guard's kill switch (GUARD_POLICY's on_budget_alert).
@minValue(0)
@description('Monthly budget of the subscription, in its billing currency, whose alerts call the app\'s budget-alert route. 0: no budget and no action group.')
param budgetAmount int = 0

@minLength(1)
@maxLength(5)
@description('Percentages of budgetAmount (actual spend) at which the budget alerts the app: 1 to 5 of them.')
param budgetThresholds array = [
  80
  100
]

@description('First day of the budget (the first of a month); default the first of this month.')
param budgetStartDate string = utcNow('yyyy-MM-01')

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-api-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'

// Queue names: the code's defaults (CONTRACT section 1); the poison queue is the host's '<queue>-poison'.
var cancelRequestsQueue = 'cancel-requests'
var cancelResultsQueue = 'cancel-results'
var cancelRequestsPoisonQueue = '${cancelRequestsQueue}-poison'

// The other optional settings, at the code's defaults, written out so operators see and can change them.
var secretCacheSeconds = '300'
var keyVaultVerifyChallengeResource = 'true'
var upstreamTimeoutSeconds = '30'
var upstreamMaxRetries = '3'
var upstreamDeadlineSeconds = '60'
var resultsTtlSeconds = '-1'
// The guard's sweep every five minutes (six-field NCRONTAB); the host disables the timer when it is unset.
var guardSchedule = '0 */5 * * * *'

// /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.CognitiveServices/accounts/<name>:
// its shape is checked before any part is read (`?:` evaluates only the branch it takes), so a
// malformed id is refused by the openai-key module's azureOpenAiResourceIdIsWellFormed parameter,
// which names the problem, instead of failing on an index. (Bicep's fail() would say it here, but
// the checkov release make test pins cannot parse fail().)
var useOpenAiAccount = !empty(azureOpenAiResourceId)
var openAiIdSegments = split(azureOpenAiResourceId, '/')
var openAiIdHasNineSegments = length(openAiIdSegments) == 9
var openAiIdPrefixIsRight = openAiIdHasNineSegments ? toLower(concat(openAiIdSegments[0], '/', openAiIdSegments[1], '/', openAiIdSegments[3], '/', openAiIdSegments[5])) == '/subscriptions/resourcegroups/providers' : false
var openAiIdNamesAnAccount = openAiIdHasNineSegments ? toLower(concat(openAiIdSegments[6], '/', openAiIdSegments[7])) == 'microsoft.cognitiveservices/accounts' : false
var openAiIdNamesAreSet = openAiIdHasNineSegments ? !contains([openAiIdSegments[2], openAiIdSegments[4], openAiIdSegments[8]], '') : false
var openAiIdIsWellFormed = openAiIdPrefixIsRight && openAiIdNamesAnAccount && openAiIdNamesAreSet
var openAiIdParts = openAiIdIsWellFormed ? openAiIdSegments : ['', '', '', '', '', '', '', '', '']

// The extra resources, each with every field (resourceId and endpoint '' when not given). Operands
// that are property reads or comparisons are parenthesised: pycep-parser, which tests/test_infra.py
// reads the templates with, otherwise reads `r.a == b` as `r.(a == b)`. The only lambda is
// filter(): checkov's older pycep-parser reads no other (no map(), no toObject()).
// Split on every character a name may have, a name leaves only empty pieces (split() takes an array of delimiters).
var openAiResourceNameCharacters = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '-']
var extraOpenAiNames = [for extra in azureOpenAiResources: extra.name]
var extraOpenAiGiven = [for extra in azureOpenAiResources: {
  name: extra.name
  auth: extra.auth
  resourceId: contains(extra, 'resourceId') ? extra.resourceId : ''
  endpoint: contains(extra, 'endpoint') ? extra.endpoint : ''
  apiVersion: contains(extra, 'apiVersion') ? extra.apiVersion : ''
}]
// The names the app accepts (shared/settings.py RESOURCE_NAME, not `default`), once each; exactly
// one of resourceId and endpoint; one of the code's auth modes.
var badExtraOpenAiNames = filter(extraOpenAiNames, extraName => (length(extraName) < 1) || (length(extraName) > 40) || (extraName == 'default') || (indexOf(extraOpenAiNames, extraName) != lastIndexOf(extraOpenAiNames, extraName)) || !empty(join(split(extraName, openAiResourceNameCharacters), '')))
var badExtraOpenAiEntries = filter(extraOpenAiGiven, extra => (empty(extra.resourceId) == empty(extra.endpoint)) || !contains(['api-key', 'entra'], extra.auth))
var extraOpenAiResourcesAreValid = empty(badExtraOpenAiNames) && empty(badExtraOpenAiEntries)
// An invalid list deploys nothing per resource; the function app module's guard then refuses it.
var extraOpenAi = extraOpenAiResourcesAreValid ? extraOpenAiGiven : []

// Each extra resource id, checked like azureOpenAiResourceId above before any part is read.
var extraOpenAiIdSegments = [for extra in extraOpenAi: split(extra.resourceId, '/')]
var extraOpenAiIdIsWellFormed = [for segments in extraOpenAiIdSegments: (length(segments) == 9) ? ((toLower(concat(segments[0], '/', segments[1], '/', segments[3], '/', segments[5], '/', segments[6], '/', segments[7])) == '/subscriptions/resourcegroups/providers/microsoft.cognitiveservices/accounts') && !contains([segments[2], segments[4], segments[8]], '')) : false]
var extraOpenAiIdParts = [for (segments, index) in extraOpenAiIdSegments: extraOpenAiIdIsWellFormed[index] ? segments : ['', '', '', '', '', '', '', '', '']]
var extraOpenAiKeyCopies = [for extra in extraOpenAi: ((extra.auth) == 'api-key') && !empty(extra.resourceId)]
var extraOpenAiRoleGrants = [for extra in extraOpenAi: ((extra.auth) == 'entra') && !empty(extra.resourceId)]
var extraOpenAiKeyFields = [for extra in extraOpenAi: ((extra.auth) == 'api-key') ? { key_secret_name: 'azure-openai-api-key-${extra.name}' } : {}]
var extraOpenAiVersionFields = [for extra in extraOpenAi: empty(extra.apiVersion) ? {} : { api_version: extra.apiVersion }]
var extraOpenAiUsesKey = !empty(filter(extraOpenAi, extra => (extra.auth) == 'api-key'))

// entra mode never reads Key Vault (CONTRACT section 8): the vault exists only when the default
// resource (there is one when its endpoint or account is given) or an extra one uses an api-key.
var hasDefaultResource = useOpenAiAccount || !empty(azureOpenAiEndpoint)
var defaultUsesKey = hasDefaultResource && (azureOpenAiAuth == 'api-key')
var useKeyVault = defaultUsesKey || extraOpenAiUsesKey
var keySource = defaultUsesKey ? (useOpenAiAccount ? 'account' : (empty(azureOpenAiApiKey) ? 'none' : 'parameter')) : 'none'
var grantOpenAiRole = useOpenAiAccount && (azureOpenAiAuth == 'entra')

resource rg 'Microsoft.Resources/resourceGroups@2024-11-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-api-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    queueNames: [
      cancelRequestsQueue
      cancelResultsQueue
      cancelRequestsPoisonQueue
    ]
  }
}

module keyVault 'modules/keyvault.bicep' = if (useKeyVault) {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    enablePurgeProtection: keyVaultEnablePurgeProtection
    publicNetworkAccess: keyVaultPublicNetworkAccess
  }
}

module openAiKey 'modules/openai-key.bicep' = if (keySource != 'none') {
  name: 'openai-key'
  scope: rg
  params: {
    keyVaultName: keyVault!.outputs.name
    secretName: azureOpenAiKeySecretName
    openAiSubscriptionId: useOpenAiAccount ? openAiIdParts[2] : ''
    openAiResourceGroupName: useOpenAiAccount ? openAiIdParts[4] : ''
    openAiAccountName: useOpenAiAccount ? openAiIdParts[8] : ''
    azureOpenAiResourceIdIsWellFormed: useOpenAiAccount ? openAiIdIsWellFormed : true
    apiKey: azureOpenAiApiKey
  }
}

// A malformed id deploys this module into our own resource group, where its
// azureOpenAiResourceIdIsWellFormed parameter refuses it: a scope built of empty parts would fail
// first, on the scope, without naming the problem.
module openAiAccess 'modules/openai-access.bicep' = if (grantOpenAiRole) {
  name: 'openai-access'
  scope: resourceGroup(openAiIdIsWellFormed ? openAiIdParts[2] : subscription().subscriptionId, openAiIdIsWellFormed ? openAiIdParts[4] : rg.name)
  params: {
    azureOpenAiResourceIdIsWellFormed: openAiIdIsWellFormed
    openAiAccountName: openAiIdParts[8]
    appPrincipalId: identity.outputs.principalId
  }
}

// Per extra resource named by its account: its key1 copied into Key Vault (api-key), or the app's
// role on the account (entra), with the same modules and guards as the default resource's.
module extraOpenAiKeys 'modules/openai-key.bicep' = [for (extra, index) in extraOpenAi: if(extraOpenAiKeyCopies[index]) {
  name: 'openai-key-${extra.name}'
  scope: rg
  params: {
    keyVaultName: keyVault!.outputs.name
    secretName: 'azure-openai-api-key-${extra.name}'
    openAiSubscriptionId: extraOpenAiIdParts[index][2]
    openAiResourceGroupName: extraOpenAiIdParts[index][4]
    openAiAccountName: extraOpenAiIdParts[index][8]
    azureOpenAiResourceIdIsWellFormed: extraOpenAiIdIsWellFormed[index]
  }
}]

module extraOpenAiAccess 'modules/openai-access.bicep' = [for (extra, index) in extraOpenAi: if(extraOpenAiRoleGrants[index]) {
  name: 'openai-access-${extra.name}'
  scope: resourceGroup(extraOpenAiIdIsWellFormed[index] ? extraOpenAiIdParts[index][2] : subscription().subscriptionId, extraOpenAiIdIsWellFormed[index] ? extraOpenAiIdParts[index][4] : rg.name)
  params: {
    azureOpenAiResourceIdIsWellFormed: extraOpenAiIdIsWellFormed[index]
    openAiAccountName: extraOpenAiIdParts[index][8]
    appPrincipalId: identity.outputs.principalId
  }
}]

var openAiAccountEndpoint = (azureOpenAiAuth == 'api-key') ? openAiKey!.outputs.endpoint : openAiAccess!.outputs.endpoint
var openAiEndpoint = empty(azureOpenAiEndpoint) ? (useOpenAiAccount ? openAiAccountEndpoint : '') : azureOpenAiEndpoint

module rbac 'modules/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: useKeyVault ? keyVault!.outputs.name : ''
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    requestsQueueName: cancelRequestsQueue
    resultsQueueName: cancelResultsQueue
    poisonQueueName: cancelRequestsPoisonQueue
    appPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
  }
}

module api 'modules/functionapp.bicep' = {
  name: 'api'
  scope: rg
  params: {
    planName: 'plan-${resourceToken}'
    appName: functionAppName
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageBlobEndpoint: storage.outputs.blobEndpoint
    storageQueueEndpoint: storage.outputs.queueEndpoint
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    maximumInstanceCount: maximumInstanceCount
    azureOpenAiEndpoint: openAiEndpoint
    azureOpenAiApiVersion: azureOpenAiApiVersion
    azureOpenAiAuth: azureOpenAiAuth
    keyVaultUrl: useKeyVault ? keyVault!.outputs.uri : ''
    azureOpenAiKeySecretName: azureOpenAiKeySecretName
    secretCacheSeconds: secretCacheSeconds
    keyVaultVerifyChallengeResource: keyVaultVerifyChallengeResource
    cancelRequestsQueue: cancelRequestsQueue
    cancelResultsQueue: cancelResultsQueue
    upstreamTimeoutSeconds: upstreamTimeoutSeconds
    upstreamMaxRetries: upstreamMaxRetries
    upstreamDeadlineSeconds: upstreamDeadlineSeconds
    resultsTtlSeconds: resultsTtlSeconds
    guardSchedule: guardSchedule
    guardPolicy: guardPolicy
    azureOpenAiResourcesAreValid: extraOpenAiResourcesAreValid
    // Each entry's value is what the app reads for it (shared/settings.py _named_resources).
    azureOpenAiResources: [for (extra, index) in extraOpenAi: {
      name: extra.name
      value: union({
        endpoint: empty(extra.endpoint) ? (extraOpenAiKeyCopies[index] ? extraOpenAiKeys[index]!.outputs.endpoint : extraOpenAiAccess[index]!.outputs.endpoint) : extra.endpoint
        auth: extra.auth
      }, extraOpenAiKeyFields[index], extraOpenAiVersionFields[index])
    }]
  }
  // The host starts with identity-based storage: its roles must exist before it does.
  dependsOn: [
    rbac
  ]
}

// The budget and its action group, only when budgetAmount is set. Each threshold is one notification
// (a budget takes at most five); the object is written out because checkov's pycep-parser reads no
// toObject(), and `?:` reads only the branch it takes, so no index past the list is read.
var useBudget = budgetAmount > 0

module budgetAlert 'modules/budget-alert.bicep' = if (useBudget) {
  name: 'budget-alert'
  scope: rg
  params: {
    name: 'ag-guard-${resourceToken}'
    functionAppName: api.outputs.name
    tags: tags
  }
}

var budgetNotificationList = [for threshold in budgetThresholds: {
  enabled: true
  operator: 'GreaterThanOrEqualTo'
  threshold: threshold
  thresholdType: 'Actual'
  contactGroups: [
    budgetAlert!.outputs.id
  ]
}]
var budgetNotifications = union({ threshold1: budgetNotificationList[0] }, length(budgetThresholds) > 1 ? { threshold2: budgetNotificationList[1] } : {}, length(budgetThresholds) > 2 ? { threshold3: budgetNotificationList[2] } : {}, length(budgetThresholds) > 3 ? { threshold4: budgetNotificationList[3] } : {}, length(budgetThresholds) > 4 ? { threshold5: budgetNotificationList[4] } : {})
var budgetName = 'budget-ft-${resourceToken}'

resource budget 'Microsoft.Consumption/budgets@2021-10-01' = if (useBudget) {
  name: budgetName
  properties: {
    category: 'Cost'
    amount: budgetAmount
    timeGrain: 'Monthly'
    timePeriod: {
      startDate: budgetStartDate
    }
    notifications: budgetNotifications
  }
}

// Names and URLs only: no key, connection string or secret value is ever an output.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output AZURE_FUNCTION_APP_URL string = 'https://${api.outputs.defaultHostName}'
output AZURE_FUNCTION_APP_PRINCIPAL_ID string = identity.outputs.principalId
output AZURE_OPENAI_AUTH string = azureOpenAiAuth
output AZURE_KEY_VAULT_NAME string = useKeyVault ? keyVault!.outputs.name : ''
output AZURE_KEY_VAULT_URL string = useKeyVault ? keyVault!.outputs.uri : ''
output AZURE_OPENAI_KEY_SECRET_NAME string = azureOpenAiKeySecretName
output AZURE_OPENAI_KEY_SOURCE string = keySource
output AZURE_OPENAI_RESOURCE_NAMES array = [for extra in extraOpenAi: extra.name]
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output CANCEL_REQUESTS_QUEUE string = cancelRequestsQueue
output CANCEL_RESULTS_QUEUE string = cancelResultsQueue
output CANCEL_REQUESTS_POISON_QUEUE string = cancelRequestsPoisonQueue
output AZURE_BUDGET_NAME string = useBudget ? budgetName : ''

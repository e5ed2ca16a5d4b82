// The Flex Consumption (FC1) plan and the Python function app, with every app setting the code reads.
// Flex Consumption takes the runtime from functionAppConfig.runtime: FUNCTIONS_WORKER_RUNTIME and
// FUNCTIONS_EXTENSION_VERSION are not app settings on this plan.

param planName string
param appName string
param location string
param tags object = {}
param serviceName string = 'api'

param identityId string
param identityClientId string

param storageBlobEndpoint string
param storageQueueEndpoint string
param deploymentContainerName string
param applicationInsightsConnectionString string

@allowed([
  '3.11'
])
param pythonVersion string = '3.11'

// Flex Consumption: the lowest maximum instance count is 40, the highest 1000 (Flex Consumption plan
// docs, "Considerations: Scale"); outside that range ARM refuses the site.
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 100

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

// Concurrent HTTP invocations one instance takes before Flex adds another
// (functionAppConfig.scaleAndConcurrency.triggers.http.perInstanceConcurrency; the platform default
// depends on instance memory). 8 + the queue trigger's batchSize 16 + newBatchThreshold 8 (host.json)
// = 32 = pythonThreadPoolThreadCount: every invocation one instance may hold gets a worker thread.
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 8

// The Python worker runs sync functions on one ThreadPoolExecutor; unset, its size is
// ThreadPoolExecutor's default min(32, cpu + 4) (azure-functions-python-worker,
// azure_functions_worker/dispatcher.py, Dispatcher._get_sync_tp_max_workers), i.e. 5 on a 1-vCPU
// Flex instance. Our invocations wait on I/O (Key Vault, Azure OpenAI, the queue), so 32.
param pythonThreadPoolThreadCount string = '32'

// The app settings of CONTRACT section 1; all strings, as app settings are.
param azureOpenAiEndpoint string
param azureOpenAiApiVersion string
@allowed([
  'api-key'
  'entra'
])
param azureOpenAiAuth string
@description('The vault\'s URL in api-key mode; empty in entra mode, which never reads Key Vault.')
param keyVaultUrl string
param azureOpenAiKeySecretName string
param secretCacheSeconds string
param keyVaultVerifyChallengeResource string
param cancelRequestsQueue string
param cancelResultsQueue string
param upstreamTimeoutSeconds string
param upstreamMaxRetries string
param upstreamDeadlineSeconds string
param resultsTtlSeconds string
// The guard (CONTRACT section 8): the timer trigger's NCRONTAB schedule, and the policy (empty: none).
param guardSchedule string
param guardPolicy string

// main.bicep passes false when an entry of its azureOpenAiResources is refused: ARM then refuses
// this module, naming this parameter, and nothing was deployed for any of those resources.
@allowed([
  true
])
@description('false when azureOpenAiResources has a name that is not 1 to 40 of a-z, 0-9 and -, is default or is used twice, or an entry without exactly one of resourceId and endpoint, or whose auth is not api-key or entra.')
param azureOpenAiResourcesAreValid bool = true

@description('The extra Azure OpenAI resources, [{name, value}], value being the entry AZURE_OPENAI_RESOURCES holds for name.')
param azureOpenAiResources array = []

// CONTRACT section 8: a JSON object of named resources; '' (none) is what the app reads as unset.
// Written member by member (checkov's pycep-parser cannot read toObject()); a name is only
// a-z, 0-9 and - (main.bicep refuses any other), so it needs no JSON escaping.
var azureOpenAiResourcesMembers = [for entry in azureOpenAiResources: concat('"', entry.name, '":', string(entry.value))]
var azureOpenAiResourcesSetting = empty(azureOpenAiResources) ? '' : concat('{', join(azureOpenAiResourcesMembers, ','), '}')

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

// No ftpsState: Flex Consumption refuses it ("... (Site.SiteConfig.FtpsState, ...) for Flex
// Consumption sites is invalid", microsoft/azure-pipelines-tasks#21032); FTP stays off through the
// ftp publishing-credentials policy below. scmMinTlsVersion and http20Enabled are kept: the azurerm
// provider's azurerm_function_app_flex_consumption sends both for Flex sites
// (hashicorp/terraform-provider-azurerm, ExpandSiteConfigFunctionFlexConsumptionAppV20250501),
// and the Flex deprecation list does not name them.
resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: appName
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      http20Enabled: true
      appSettings: [
        // Host storage by identity: no connection string, no account key anywhere.
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        {
          name: 'AzureWebJobsStorage__blobServiceUri'
          value: storageBlobEndpoint
        }
        {
          name: 'AzureWebJobsStorage__queueServiceUri'
          value: storageQueueEndpoint
        }
        // DefaultAzureCredential picks the user-assigned identity by this client id.
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: applicationInsightsConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identityClientId};Authorization=AAD'
        }
        {
          name: 'AZURE_OPENAI_ENDPOINT'
          value: azureOpenAiEndpoint
        }
        {
          name: 'AZURE_OPENAI_API_VERSION'
          value: azureOpenAiApiVersion
        }
        {
          name: 'AZURE_OPENAI_AUTH'
          value: azureOpenAiAuth
        }
        {
          name: 'AZURE_OPENAI_RESOURCES'
          value: azureOpenAiResourcesSetting
        }
        {
          name: 'KEY_VAULT_URL'
          value: keyVaultUrl
        }
        {
          name: 'AZURE_OPENAI_KEY_SECRET_NAME'
          value: azureOpenAiKeySecretName
        }
        {
          name: 'SECRET_CACHE_SECONDS'
          value: secretCacheSeconds
        }
        {
          name: 'KEY_VAULT_VERIFY_CHALLENGE_RESOURCE'
          value: keyVaultVerifyChallengeResource
        }
        {
          name: 'CANCEL_REQUESTS_QUEUE'
          value: cancelRequestsQueue
        }
        {
          name: 'CANCEL_RESULTS_QUEUE'
          value: cancelResultsQueue
        }
        {
          name: 'UPSTREAM_TIMEOUT_SECONDS'
          value: upstreamTimeoutSeconds
        }
        {
          name: 'UPSTREAM_MAX_RETRIES'
          value: upstreamMaxRetries
        }
        {
          name: 'UPSTREAM_DEADLINE_SECONDS'
          value: upstreamDeadlineSeconds
        }
        {
          name: 'RESULTS_TTL_SECONDS'
          value: resultsTtlSeconds
        }
        {
          name: 'PYTHON_THREADPOOL_THREAD_COUNT'
          value: pythonThreadPoolThreadCount
        }
        {
          name: 'GUARD_SCHEDULE'
          value: guardSchedule
        }
        {
          name: 'GUARD_POLICY'
          value: guardPolicy
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// Publishing goes through Entra ID (azd, az, Core Tools); basic-auth FTP and SCM stay off.
// ARM needs `location` here ("The parameter location has an invalid value" without it), though the
// published type leaves it out (bicep-types-az#1317, #1529, #1571); AVM's
// avm/res/web/site/basic-publishing-credentials-policy sets it too. Bicep warns BCP187 for it.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  #disable-next-line BCP187
  location: location
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  #disable-next-line BCP187
  location: location
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName

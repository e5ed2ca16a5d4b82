// Writes the Azure OpenAI api-key into Key Vault: read from the account itself (listKeys) when its
// resource id is given, else from a secure parameter. Nothing here is ever an output but the endpoint.

param keyVaultName string
param secretName string

@description('Subscription, resource group and name of an existing Azure OpenAI account; empty to use apiKey.')
param openAiSubscriptionId string = ''
param openAiResourceGroupName string = ''
param openAiAccountName string = ''

// main.bicep passes false when its azureOpenAiResourceId is malformed: ARM then refuses this
// module, naming this parameter, before anything reads the account.
@allowed([
  true
])
@description('false when azureOpenAiResourceId is not /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.CognitiveServices/accounts/<name>.')
param azureOpenAiResourceIdIsWellFormed bool = true

@secure()
@description('The api-key itself, used only when no account is named.')
param apiKey string = ''

var fromAccount = !empty(openAiAccountName)

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

// The account may live in another resource group or subscription; the deployer needs its listKeys action.
// Conditional, so every read says `openAi!`: it is read only where fromAccount holds (BCP318).
resource openAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = if (fromAccount) {
  name: openAiAccountName
  scope: resourceGroup(openAiSubscriptionId, openAiResourceGroupName)
}

// main.bicep deploys this module only when there is a key to write.
resource apiKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: secretName
  properties: {
    contentType: 'Azure OpenAI api-key'
    value: fromAccount ? openAi!.listKeys().key1 : apiKey
  }
}

// https://<custom subdomain>.openai.azure.com/, the endpoint Azure OpenAI documents for api-key calls.
output endpoint string = fromAccount ? 'https://${openAi!.properties.customSubDomainName}.openai.azure.com/' : ''

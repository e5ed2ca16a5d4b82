// Keyless (entra) mode: the app's identity may cancel fine-tuning jobs on an existing Azure OpenAI
// account. Deployed into the account's own resource group, which may be in another subscription:
// a role assignment can only be made from a deployment at its scope's resource group.

// main.bicep passes false when its azureOpenAiResourceId is malformed: ARM then refuses this
// module, naming this parameter, before anything reads the account or assigns a role.
@allowed([
  true
])
@description('false when azureOpenAiResourceId is not /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.CognitiveServices/accounts/<name>.')
param azureOpenAiResourceIdIsWellFormed bool = true

@description('Name of the Azure OpenAI account, in the resource group this module is deployed to.')
param openAiAccountName string

@description('Principal id of the function app\'s user-assigned identity.')
param appPrincipalId string

// Cancelling a job is a data action under Microsoft.CognitiveServices/accounts/OpenAI/fine-tunes/
// (read, write, delete). Of the built-in roles, Cognitive Services OpenAI User has only
// OpenAI/*/read and inference actions; Cognitive Services OpenAI Contributor has OpenAI/*
// and no listKeys; Cognitive Services User and Azure AI User grant every Cognitive Services data
// action (Azure built-in roles, "AI + machine learning").
var cognitiveServicesOpenAiContributorRoleId = 'a001fd3d-188f-4b5d-821b-7da978bf7442' // Cognitive Services OpenAI Contributor

resource openAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: openAiAccountName
}

resource appOpenAiContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(openAi.id, appPrincipalId, cognitiveServicesOpenAiContributorRoleId)
  scope: openAi
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', cognitiveServicesOpenAiContributorRoleId)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Entra ID tokens are accepted on the custom subdomain endpoint only, https://<subdomain>.openai.azure.com/.
output endpoint string = 'https://${openAi.properties.customSubDomainName}.openai.azure.com/'

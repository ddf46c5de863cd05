// Command k8s-schemas writes the JSON schemas kubeconform validates against,
// offline: one standalone, strict file per kind, named as kubeconform's
// default template expects ({{ .ResourceKind }}{{ .KindSuffix }}.json, e.g.
// deployment-apps-v1.json, service-v1.json).
//
//	k8s-schemas -out DIR -openapi DIR/api/openapi-spec/v3 [-crd FILE.yaml]...
//
// Built-in kinds come from Kubernetes' OpenAPI v3 documents: each kind's
// schema with the schemas it references copied under "definitions". Custom
// kinds come from CustomResourceDefinition files (every served version).
// "Strict" means additionalProperties: false on every object schema that
// lists properties and allows nothing else, as `kubectl apply` rejects
// unknown fields.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

type crdFiles []string

func (c *crdFiles) String() string     { return strings.Join(*c, ",") }
func (c *crdFiles) Set(v string) error { *c = append(*c, v); return nil }

const refPrefix = "#/components/schemas/"

func main() {
	out := flag.String("out", "", "output directory")
	openapi := flag.String("openapi", "", "directory of Kubernetes' OpenAPI v3 documents (api/openapi-spec/v3)")
	var crds crdFiles
	flag.Var(&crds, "crd", "CustomResourceDefinition YAML file (repeatable; may hold several documents)")
	flag.Parse()
	if *out == "" || *openapi == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fail(err)
	}
	n, err := builtins(*openapi, *out)
	if err != nil {
		fail(err)
	}
	for _, f := range crds {
		m, err := customs(f, *out)
		if err != nil {
			fail(fmt.Errorf("%s: %w", f, err))
		}
		n += m
	}
	fmt.Printf("k8s-schemas: %d schemas in %s\n", n, *out)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "k8s-schemas:", err)
	os.Exit(1)
}

// fileName is kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}.json.
func fileName(group, version, kind string) string {
	first := strings.Split(group, ".")[0]
	if first == "" {
		return strings.ToLower(kind) + "-" + version + ".json"
	}
	return strings.ToLower(kind) + "-" + strings.ToLower(first) + "-" + version + ".json"
}

func builtins(dir, out string) (int, error) {
	docs, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil || len(docs) == 0 {
		return 0, fmt.Errorf("no OpenAPI documents in %s", dir)
	}
	all := map[string]any{}
	for _, d := range docs {
		raw, err := os.ReadFile(d)
		if err != nil {
			return 0, err
		}
		var doc struct {
			Components struct {
				Schemas map[string]any `json:"schemas"`
			} `json:"components"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			return 0, fmt.Errorf("%s: %w", d, err)
		}
		for k, v := range doc.Components.Schemas {
			all[k] = v
		}
	}
	names := make([]string, 0, len(all))
	for k := range all {
		names = append(names, k)
	}
	sort.Strings(names)
	n := 0
	for _, name := range names {
		s := all[name].(map[string]any)
		gvks, _ := s["x-kubernetes-group-version-kind"].([]any)
		if len(gvks) != 1 { // meta types (DeleteOptions, WatchEvent) name every group
			continue
		}
		g := gvks[0].(map[string]any)
		defs := map[string]any{}
		closure(name, all, defs)
		schema := map[string]any{"$ref": "#/definitions/" + name, "definitions": defs}
		if err := write(filepath.Join(out, fileName(str(g["group"]), str(g["version"]), str(g["kind"]))), schema); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// closure copies `name` and every schema it references into defs, converted.
func closure(name string, all, defs map[string]any) {
	if _, done := defs[name]; done {
		return
	}
	s, ok := all[name]
	if !ok {
		return
	}
	var refs []string
	defs[name] = convert(s, &refs, false)
	for _, r := range refs {
		closure(r, all, defs)
	}
}

// convert rewrites references to "#/definitions/…", collecting their names,
// and makes object schemas strict. CRD schemas (crd=true) also turn
// x-kubernetes-int-or-string and nullable into plain JSON schema.
func convert(v any, refs *[]string, crd bool) any {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = convert(e, refs, crd)
		}
		return out
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			switch {
			case k == "$ref":
				r := strings.TrimPrefix(str(e), refPrefix)
				*refs = append(*refs, r)
				out[k] = "#/definitions/" + r
			case k == "properties" || k == "patternProperties" || k == "definitions":
				m := map[string]any{}
				for pk, pv := range e.(map[string]any) {
					m[pk] = convert(pv, refs, crd)
				}
				out[k] = m
			default:
				out[k] = convert(e, refs, crd)
			}
		}
		_, props := out["properties"]
		_, extra := out["additionalProperties"]
		loose, _ := out["x-kubernetes-preserve-unknown-fields"].(bool)
		if props && !extra && !loose {
			out["additionalProperties"] = false
		}
		if crd {
			if b, _ := out["x-kubernetes-int-or-string"].(bool); b {
				delete(out, "type")
				out["oneOf"] = []any{map[string]any{"type": "integer"}, map[string]any{"type": "string"}}
			}
			if b, _ := out["nullable"].(bool); b {
				if t, ok := out["type"].(string); ok {
					out["type"] = []any{t, "null"}
				}
			}
		}
		return out
	default:
		return v
	}
}

func customs(file, out string) (int, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, part := range strings.Split("\n"+string(raw), "\n---") {
		var crd struct {
			Kind string `json:"kind"`
			Spec struct {
				Group string `json:"group"`
				Names struct {
					Kind string `json:"kind"`
				} `json:"names"`
				Versions []struct {
					Name   string `json:"name"`
					Served bool   `json:"served"`
					Schema struct {
						OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
					} `json:"schema"`
				} `json:"versions"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(part), &crd); err != nil {
			return n, err
		}
		if crd.Kind != "CustomResourceDefinition" {
			continue
		}
		for _, v := range crd.Spec.Versions {
			if !v.Served || v.Schema.OpenAPIV3Schema == nil {
				continue
			}
			var refs []string
			schema := convert(v.Schema.OpenAPIV3Schema, &refs, true).(map[string]any)
			// The API server fills these in for every custom resource.
			props, _ := schema["properties"].(map[string]any)
			if props == nil {
				props = map[string]any{}
				schema["properties"] = props
			}
			props["apiVersion"] = map[string]any{"type": "string"}
			props["kind"] = map[string]any{"type": "string"}
			props["metadata"] = map[string]any{"type": "object"}
			if err := write(filepath.Join(out, fileName(crd.Spec.Group, v.Name, crd.Spec.Names.Kind)), schema); err != nil {
				return n, err
			}
			n++
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("no CustomResourceDefinition with a schema")
	}
	return n, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func write(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

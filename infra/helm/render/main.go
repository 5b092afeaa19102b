// Command render renders a Helm chart the way `helm template` does, for
// machines where the helm binary cannot be installed: Go's text/template
// (the engine Helm uses) with the Sprig functions (the library Helm uses,
// Debian's golang-github-masterminds-sprig-dev) and Helm's own additions
// (include, tpl, required, toYaml, fromYaml, toJson); values.yaml merged
// with -f files and --set key=value pairs; the built-in objects .Values,
// .Release, .Chart and .Capabilities; templates whose name starts with
// "_" define but do not render; "missingkey=zero" with "<no value>"
// removed, as Helm does. Not implemented: lookup, .Files, subcharts, hooks.
//
// Usage: render [-f values.yaml]... [--set a.b=c]... [--namespace ns] <release> <chart dir>
package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "render: "+format+"\n", args...)
	os.Exit(1)
}

func readYAML(path string) map[string]interface{} {
	data, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		fail("%s: %v", path, err)
	}
	return out
}

// merge lays over on base, recursively for maps, as Helm coalesces values.
func merge(base, over map[string]interface{}) map[string]interface{} {
	for k, v := range over {
		if vm, ok := v.(map[string]interface{}); ok {
			if bm, ok := base[k].(map[string]interface{}); ok {
				base[k] = merge(bm, vm)
				continue
			}
		}
		base[k] = v
	}
	return base
}

func set(values map[string]interface{}, assignment string) {
	key, raw, ok := strings.Cut(assignment, "=")
	if !ok {
		fail("--set %q is not key=value", assignment)
	}
	var value interface{} = raw
	switch raw {
	case "true":
		value = true
	case "false":
		value = false
	}
	parts := strings.Split(key, ".")
	node := values
	for _, part := range parts[:len(parts)-1] {
		next, ok := node[part].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			node[part] = next
		}
		node = next
	}
	node[parts[len(parts)-1]] = value
}

func toYAML(v interface{}) string {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func main() {
	var files, sets []string
	namespace := "default"
	var positional []string
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-f", "--values":
			i++
			files = append(files, args[i])
		case "--set":
			i++
			sets = append(sets, args[i])
		case "-n", "--namespace":
			i++
			namespace = args[i]
		default:
			positional = append(positional, args[i])
		}
	}
	if len(positional) != 2 {
		fail("usage: render [-f values.yaml]... [--set a.b=c]... [--namespace ns] <release> <chart dir>")
	}
	release, chart := positional[0], positional[1]
	meta := readYAML(filepath.Join(chart, "Chart.yaml"))
	values := readYAML(filepath.Join(chart, "values.yaml"))
	for _, f := range files {
		values = merge(values, readYAML(f))
	}
	for _, s := range sets {
		set(values, s)
	}
	context := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"],
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.31.0", "Major": "1", "Minor": "31"},
		},
	}

	root := template.New("chart").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = toYAML
	funcs["toJson"] = funcs["toJson"]
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		out := map[string]interface{}{}
		_ = yaml.Unmarshal([]byte(s), &out)
		return out
	}
	funcs["required"] = func(message string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, fmt.Errorf("%s", message)
		}
		return v, nil
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	root.Funcs(funcs)

	paths, _ := filepath.Glob(filepath.Join(chart, "templates", "*"))
	sort.Strings(paths)
	for _, path := range paths {
		text, err := os.ReadFile(path)
		if err != nil {
			fail("%v", err)
		}
		if _, err := root.New(filepath.Base(path)).Parse(string(text)); err != nil {
			fail("%s: %v", path, err)
		}
	}
	for _, path := range paths {
		name := filepath.Base(path)
		if strings.HasPrefix(name, "_") || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
			continue
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, context); err != nil {
			fail("%s: %v", name, err)
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		for _, doc := range strings.Split(out, "\n---") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			fmt.Printf("---\n# Source: %s/templates/%s\n%s\n", meta["name"], name, strings.Trim(doc, "\n"))
		}
	}
}

package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// document remembers where the YAML came from, so that every error can
// name the file, the line and the field path.
type document struct {
	name  string
	paths map[*yaml.Node]string // filled by check
}

var (
	configType      = reflect.TypeFor[Config]()
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
)

// errorf formats an error about node n ("FILE:LINE: PATH: message").
func (d *document) errorf(n *yaml.Node, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if n == nil {
		return fmt.Errorf("%s: %s", d.name, msg)
	}
	return fmt.Errorf("%s:%d: %s", d.name, n.Line, msg)
}

// check walks the document against the Go type it decodes into and refuses
// unknown fields and values of the wrong kind, naming their path. It
// records the path of every node it visits for later errors.
func (d *document) check(n *yaml.Node, t reflect.Type, path string) error {
	d.paths[n] = path
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.AliasNode {
		return d.errorf(n, "%s: YAML aliases are not supported", display(path))
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil // the type checks its own value, and fails with a nodeError
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return d.errorf(n, "%s: want a mapping of fields", display(path))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fieldByTag(t, k.Value)
			if !ok {
				return d.errorf(k, "%s: unknown field %q (known: %s)", display(join(path, k.Value)), k.Value, strings.Join(knownFields(t), ", "))
			}
			if err := d.check(v, f.Type, join(path, k.Value)); err != nil {
				return err
			}
		}
	case reflect.Slice:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return nil
		}
		if n.Kind != yaml.SequenceNode {
			return d.errorf(n, "%s: want a list", display(path))
		}
		for i, e := range n.Content {
			if err := d.check(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return nil
		}
		if n.Kind != yaml.MappingNode {
			return d.errorf(n, "%s: want a mapping", display(path))
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return d.errorf(k, "%s: want a plain key", display(path))
			}
			d.paths[k] = join(path, k.Value)
			if err := d.check(v, t.Elem(), join(path, k.Value)); err != nil {
				return err
			}
		}
	case reflect.Interface:
		// Any value: aliases are refused and paths recorded, all the way down.
		switch n.Kind {
		case yaml.MappingNode:
			return d.check(n, reflect.TypeFor[map[string]any](), path)
		case yaml.SequenceNode:
			return d.check(n, reflect.TypeFor[[]any](), path)
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			return d.errorf(n, "%s: want a string", display(path))
		}
	case reflect.Bool:
		if _, err := strconv.ParseBool(n.Value); n.Kind != yaml.ScalarNode || err != nil {
			return d.errorf(n, "%s: want true or false", display(path))
		}
	case reflect.Int, reflect.Int64:
		if _, err := strconv.Atoi(n.Value); n.Kind != yaml.ScalarNode || err != nil {
			return d.errorf(n, "%s: want a whole number", display(path))
		}
	case reflect.Float64:
		if _, err := strconv.ParseFloat(n.Value, 64); n.Kind != yaml.ScalarNode || err != nil {
			return d.errorf(n, "%s: want a number", display(path))
		}
	}
	return nil
}

// node finds the node at a path such as "upstreams[1].hosts[0]", or the
// nearest existing ancestor, so that an error about a missing field points
// at the mapping that lacks it.
func (d *document) node(root *yaml.Node, path string) *yaml.Node {
	n := root
	for _, seg := range strings.Split(path, ".") {
		name, rest, _ := strings.Cut(seg, "[")
		next := mappingValue(n, name)
		if next == nil {
			return n
		}
		n = next
		for rest != "" {
			idx, after, _ := strings.Cut(rest, "]")
			rest = strings.TrimPrefix(after, "[")
			i, err := strconv.Atoi(idx)
			if err != nil || n.Kind != yaml.SequenceNode || i >= len(n.Content) {
				return n
			}
			n = n.Content[i]
		}
	}
	return n
}

// set reports whether the document sets the field at path (such as
// "upstreams[0].max_queue") itself.
func (d *document) set(root *yaml.Node, path string) bool {
	n := d.node(root, path)
	return n != nil && d.paths[n] == path
}

func mappingValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

func fieldByTag(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); tag == name && tag != "-" {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func knownFields(t reflect.Type) []string {
	var names []string
	for i := range t.NumField() {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); tag != "" && tag != "-" {
			names = append(names, tag)
		}
	}
	return names
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func display(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}

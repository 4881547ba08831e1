package config

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"
)

// profileFiles are the built-in vendor profiles: each file is one upstream
// in the config's own form, named after the file.
//
//go:embed profiles/*.yaml
var profileFiles embed.FS

// Profiles lists the names of the built-in vendor profiles.
func Profiles() []string {
	entries, _ := fs.ReadDir(profileFiles, "profiles")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(names)
	return names
}

// Profile returns the built-in profile name as an Upstream, before defaults.
func Profile(name string) (Upstream, error) {
	data, err := profileFiles.ReadFile("profiles/" + name + ".yaml")
	if err != nil {
		return Upstream{}, fmt.Errorf("no profile %q (built in: %s)", name, strings.Join(Profiles(), ", "))
	}
	var u Upstream
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&u); err != nil {
		return Upstream{}, fmt.Errorf("profile %s: %w", name, err)
	}
	if u.Name == "" {
		u.Name = name
	}
	u.Profile = name
	return u, nil
}

// applyProfiles rebuilds every upstream that names a profile: the profile
// first, then every field the file sets on top of it.
func applyProfiles(cfg *Config, d *document, root *yaml.Node) error {
	for i := range cfg.Upstreams {
		name := cfg.Upstreams[i].Profile
		if name == "" {
			continue
		}
		path := fmt.Sprintf("upstreams[%d]", i)
		base, err := Profile(name)
		if err != nil {
			return d.errorf(d.node(root, path+".profile"), "%s.profile: %v", path, err)
		}
		if err := d.node(root, path).Decode(&base); err != nil {
			return fmt.Errorf("%s: %s: %w", d.name, path, err)
		}
		cfg.Upstreams[i] = base
	}
	return nil
}

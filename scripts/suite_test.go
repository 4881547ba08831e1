package scripts_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoGoroutineCallsFatal reads every test file of the module and fails
// on code that runs on another goroutine than the test's (a go statement,
// an HTTP handler) and can stop the test from there: a call of t.Fatal*, t.FailNow or t.Skip* (the
// testing package forbids it: the failure then hangs or is lost), or a
// call that hands the test's T (or B, TB, F) to a helper, which may call
// them. Helpers used from goroutines return errors instead; t.Error*,
// t.Log* and t.Helper are safe from any goroutine.
func TestNoGoroutineCallsFatal(t *testing.T) {
	fset := token.NewFileSet()
	var problems []string
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "node_modules" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") && d.Name() != "..") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			body := otherGoroutine(n)
			if body == nil {
				return true
			}
			ast.Inspect(body, func(n ast.Node) bool {
				if lit, ok := n.(*ast.FuncLit); ok && isSubtest(body, lit) {
					return false // a t.Run body runs on its own test's goroutine
				}
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				if why := stopsTheTest(call); why != "" {
					problems = append(problems, fset.Position(call.Pos()).String()+": "+why)
				}
				return true
			})
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// otherGoroutine returns the code n runs on a goroutine other than the
// test's: the call of a go statement, or a handler given to
// http.HandlerFunc or HandleFunc (servers call it on their own goroutines).
func otherGoroutine(n ast.Node) ast.Node {
	switch n := n.(type) {
	case *ast.GoStmt:
		return n.Call
	case *ast.CallExpr:
		if sel, ok := n.Fun.(*ast.SelectorExpr); ok && (sel.Sel.Name == "HandlerFunc" || sel.Sel.Name == "HandleFunc") {
			for _, a := range n.Args {
				if lit, ok := a.(*ast.FuncLit); ok {
					return lit
				}
			}
		}
	}
	return nil
}

// testingNames are the names tests give their *testing.T, B, F or TB.
var testingNames = map[string]bool{"t": true, "b": true, "f": true, "tb": true}

// stopsTheTest names what in call may end the test from another
// goroutine, or returns "".
func stopsTheTest(call *ast.CallExpr) string {
	if sel, ok := call.Fun.(*ast.SelectorExpr); ok {
		if id, ok := sel.X.(*ast.Ident); ok && testingNames[id.Name] {
			switch name := sel.Sel.Name; {
			case strings.HasPrefix(name, "Fatal"), name == "FailNow", strings.HasPrefix(name, "Skip"):
				return id.Name + "." + name + " called in a goroutine"
			}
			return ""
		}
	}
	for _, a := range call.Args {
		if id, ok := a.(*ast.Ident); ok && testingNames[id.Name] {
			return "the test's " + id.Name + " handed to " + exprString(call.Fun) + " in a goroutine (return an error instead)"
		}
	}
	return ""
}

// isSubtest reports whether lit is the body of a t.Run call inside root.
func isSubtest(root ast.Node, lit *ast.FuncLit) bool {
	found := false
	ast.Inspect(root, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok || found {
			return !found
		}
		if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Run" && len(call.Args) == 2 && call.Args[1] == lit {
			found = true
		}
		return true
	})
	return found
}

func exprString(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return exprString(e.X) + "." + e.Sel.Name
	}
	return "a function"
}

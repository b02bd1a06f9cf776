// Command ollama_render renders chat prompts the way Ollama does, for pyft's tests.
//
// It reads a Modelfile (-modelfile) and, on stdin, a JSON array of conversations (each an array of
// {"role", "content"}). It parses the Modelfile's values, executes its TEMPLATE with Go's text/template
// on the values Ollama passes in its chat path, and prints one JSON object:
// {"commands": [[name, value], ...], "renders": [prompt, ...]}.
//
// Facts mirrored from ollama/ollama (fb30760, template/template.go, parser/parser.go, server/routes.go),
// reimplemented here with the standard library only:
//   - the template is parsed with Option("missingkey=zero") and the funcs json, currentDate, yesterdayDate;
//   - when the template names neither .Messages nor .Response, {{ .Response }} is appended;
//   - chat path: consecutive messages of one role (tool excepted) are merged with "\n\n", .System is every
//     system message joined with "\n\n", .Messages keeps all messages (system ones too), .Response is "";
//   - a Modelfile SYSTEM is prepended as a system message when the first message is not a system one;
//   - Modelfile values end at a newline once the trimmed text so far unquotes ("""...""", "..." or bare).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

type message struct {
	Role       string
	Content    string
	Thinking   string
	Images     []string
	ToolCalls  []any
	ToolName   string
	ToolCallID string
}

type inMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

var funcs = template.FuncMap{
	"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	},
	"currentDate":   func(args ...string) string { return time.Now().Format("2006-01-02") },
	"yesterdayDate": func(args ...string) string { return time.Now().AddDate(0, 0, -1).Format("2006-01-02") },
}

// unquote mirrors the Modelfile value rule: """x""" or "x" or a bare value.
func unquote(s string) (string, bool) {
	if strings.HasPrefix(s, `"""`) {
		if len(s) >= 6 && strings.HasSuffix(s, `"""`) {
			return s[3 : len(s)-3], true
		}
		return "", false
	}
	if strings.HasPrefix(s, `"`) {
		if len(s) >= 2 && strings.HasSuffix(s, `"`) {
			return s[1 : len(s)-1], true
		}
		return "", false
	}
	return s, true
}

// parseModelfile returns [name, value] pairs; PARAMETER lines become ["parameter:<name>", value].
func parseModelfile(src string) ([][2]string, error) {
	var out [][2]string
	rs := []rune(strings.ReplaceAll(src, "\r\n", "\n"))
	i := 0
	for i < len(rs) {
		// skip blank space and comments
		if rs[i] == ' ' || rs[i] == '\t' || rs[i] == '\n' {
			i++
			continue
		}
		if rs[i] == '#' {
			for i < len(rs) && rs[i] != '\n' {
				i++
			}
			continue
		}
		start := i
		for i < len(rs) && (rs[i] >= 'a' && rs[i] <= 'z' || rs[i] >= 'A' && rs[i] <= 'Z') {
			i++
		}
		if i >= len(rs) || (rs[i] != ' ' && rs[i] != '\t') {
			return nil, fmt.Errorf("invalid command at rune %d", start)
		}
		name := strings.ToLower(string(rs[start:i]))
		i++
		if name == "parameter" {
			ps := i
			for i < len(rs) && (rs[i] == '_' || rs[i] >= '0' && rs[i] <= '9' || rs[i] >= 'a' && rs[i] <= 'z' || rs[i] >= 'A' && rs[i] <= 'Z') {
				i++
			}
			if i >= len(rs) || (rs[i] != ' ' && rs[i] != '\t') {
				return nil, errors.New("bad parameter")
			}
			name = "parameter:" + string(rs[ps:i])
			i++
		}
		var b strings.Builder
		done := false
		for i < len(rs) {
			r := rs[i]
			i++
			if r == '\n' {
				if v, ok := unquote(strings.TrimSpace(b.String())); ok {
					out = append(out, [2]string{name, v})
					done = true
					break
				}
			}
			b.WriteRune(r)
		}
		if !done {
			v, ok := unquote(strings.TrimSpace(b.String()))
			if !ok {
				return nil, fmt.Errorf("unterminated value for %s", name)
			}
			out = append(out, [2]string{name, v})
		}
	}
	return out, nil
}

func identifiers(n parse.Node) []string {
	switch n := n.(type) {
	case *parse.ListNode:
		var names []string
		for _, c := range n.Nodes {
			names = append(names, identifiers(c)...)
		}
		return names
	case *parse.ActionNode:
		return identifiers(n.Pipe)
	case *parse.TemplateNode:
		if n.Pipe != nil {
			return identifiers(n.Pipe)
		}
	case *parse.IfNode:
		return identifiers(&n.BranchNode)
	case *parse.RangeNode:
		return identifiers(&n.BranchNode)
	case *parse.WithNode:
		return identifiers(&n.BranchNode)
	case *parse.BranchNode:
		names := identifiers(n.Pipe)
		for _, l := range []*parse.ListNode{n.List, n.ElseList} {
			if l != nil {
				names = append(names, identifiers(l)...)
			}
		}
		return names
	case *parse.PipeNode:
		if n == nil {
			return nil
		}
		var names []string
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				names = append(names, identifiers(a)...)
			}
		}
		return names
	case *parse.FieldNode:
		return n.Ident
	case *parse.VariableNode:
		return n.Ident
	}
	return nil
}

func render(tmpl *template.Template, system string, conv []inMessage) (string, error) {
	msgs := make([]inMessage, 0, len(conv)+1)
	if system != "" && (len(conv) == 0 || strings.ToLower(conv[0].Role) != "system") {
		msgs = append(msgs, inMessage{Role: "system", Content: system})
	}
	msgs = append(msgs, conv...)
	var systems []string
	var collated []*message
	for _, m := range msgs {
		role := strings.ToLower(m.Role)
		if role == "system" {
			systems = append(systems, m.Content)
		}
		if n := len(collated); n > 0 && collated[n-1].Role == role && role != "tool" {
			collated[n-1].Content += "\n\n" + m.Content
		} else {
			collated = append(collated, &message{Role: role, Content: m.Content})
		}
	}
	var b strings.Builder
	err := tmpl.Execute(&b, map[string]any{
		"System":     strings.Join(systems, "\n\n"),
		"Messages":   collated,
		"Tools":      nil,
		"Response":   "",
		"Think":      false,
		"ThinkLevel": "",
		"IsThinkSet": false,
	})
	return b.String(), err
}

func run() error {
	if len(os.Args) != 3 || os.Args[1] != "-modelfile" {
		return errors.New("usage: ollama_render -modelfile PATH < conversations.json")
	}
	src, err := os.ReadFile(os.Args[2])
	if err != nil {
		return err
	}
	commands, err := parseModelfile(string(src))
	if err != nil {
		return err
	}
	var convs [][]inMessage
	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(in, &convs); err != nil {
		return err
	}
	text, system := "{{ .Prompt }}", ""
	for _, c := range commands {
		switch c[0] {
		case "template":
			text = c[1]
		case "system":
			system = c[1]
		}
	}
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(text)
	if err != nil {
		return err
	}
	vars := map[string]bool{}
	for _, v := range identifiers(tmpl.Tree.Root) {
		vars[strings.ToLower(v)] = true
	}
	if !vars["messages"] {
		return errors.New("template does not use .Messages: Ollama would take its legacy prompt/response path")
	}
	renders := []string{}
	for _, conv := range convs {
		s, err := render(tmpl, system, conv)
		if err != nil {
			return err
		}
		renders = append(renders, s)
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{"commands": commands, "renders": renders})
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ollama_render:", err)
		os.Exit(1)
	}
}

package main

import (
	"bytes"
	"testing"
)

func TestZZReport(t *testing.T) {
	var out bytes.Buffer
	cmd := reportCommand()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"/tmp/a.jsonl", "-o", "/tmp/cmd-report.html"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	t.Log(out.String())
	cmd = reportCommand()
	cmd.SetArgs([]string{"/tmp/nonexistent.jsonl"})
	t.Log(cmd.Execute())
}

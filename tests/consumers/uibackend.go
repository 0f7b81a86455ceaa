// Command uibackend parses a model-sync termination message the way Kubeflow's UI backend does.
//
// The struct below is the one kubeflow/hub's BFF unmarshals the success message into
// (clients/ui/bff/internal/repositories/model_transfer_jobs.go): Go's encoding/json, pointer fields,
// exact-case tags "id". It reads the file named by its only argument and prints the three ids as JSON
// ("" for an absent object). A message the decoder rejects exits 1 with Go's error text on stderr.
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

type transferJobResult struct {
	RegisteredModel *struct {
		ID string `json:"id"`
	} `json:"RegisteredModel"`
	ModelVersion *struct {
		ID string `json:"id"`
	} `json:"ModelVersion"`
	ModelArtifact *struct {
		ID string `json:"id"`
	} `json:"ModelArtifact"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: uibackend TERMINATION_MESSAGE_FILE")
		os.Exit(2)
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var result transferJobResult
	if err := json.Unmarshal(data, &result); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ids := map[string]string{"RegisteredModel": "", "ModelVersion": "", "ModelArtifact": ""}
	if result.RegisteredModel != nil {
		ids["RegisteredModel"] = result.RegisteredModel.ID
	}
	if result.ModelVersion != nil {
		ids["ModelVersion"] = result.ModelVersion.ID
	}
	if result.ModelArtifact != nil {
		ids["ModelArtifact"] = result.ModelArtifact.ID
	}
	out, _ := json.Marshal(ids)
	fmt.Println(string(out))
}

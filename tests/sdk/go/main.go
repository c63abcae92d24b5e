// A long-lived aws-sdk-go-v2 client: see ../README.md.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func main() {
	seconds, _ := strconv.ParseFloat(os.Args[1], 64)
	interval, _ := strconv.ParseFloat(os.Args[2], 64)
	ctx := context.Background()
	out := json.NewEncoder(os.Stdout)
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		_ = out.Encode(map[string]any{"ok": false, "error": fmt.Sprint("config: ", err)})
		os.Exit(1)
	}
	client := sts.NewFromConfig(cfg)
	deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	for time.Now().Before(deadline) {
		identity, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err != nil {
			_ = out.Encode(map[string]any{"ok": false, "error": err.Error()})
		} else {
			_ = out.Encode(map[string]any{"ok": true, "arn": *identity.Arn})
		}
		time.Sleep(time.Duration(interval * float64(time.Second)))
	}
}

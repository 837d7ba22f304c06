//! `kubectl sluice templates`: the namespace's FlowTemplates and the inputs they take.

use kube::Api;
use kube::api::ListParams;
use sluice_api::FlowTemplate;

use super::print;
use crate::Result;
use crate::kubeconfig::Connection;

/// Prints the namespace's FlowTemplates as a table.
pub async fn list(conn: &Connection) -> Result<u8> {
    let templates: Api<FlowTemplate> = Api::namespaced(conn.client.clone(), &conn.namespace);
    let mut items = templates.list(&ListParams::default()).await?.items;
    items.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    if items.is_empty() {
        eprintln!("No flowtemplates in namespace {}.", conn.namespace);
        return Ok(0);
    }
    print(&render_list(&items))?;
    Ok(0)
}

/// The table of `templates`: one row per FlowTemplate. Inputs read `name:type`, with `*` when required and
/// `=value` for a default, so a user sees what `templateRef.input` must hold.
pub fn render_list(items: &[FlowTemplate]) -> String {
    let header = ["NAME", "POOL", "INPUTS", "STEPS", "DESCRIPTION"];
    let rows: Vec<[String; 5]> = items
        .iter()
        .map(|ft| {
            let inputs: Vec<String> = ft
                .spec
                .inputs
                .iter()
                .map(|(name, input)| {
                    let mut cell = format!("{name}:{}", input.type_.as_str());
                    if input.required {
                        cell.push('*');
                    } else if let Some(default) = &input.default {
                        cell.push('=');
                        cell.push_str(&default.to_string());
                    }
                    cell
                })
                .collect();
            let mut steps = ft.spec.steps.len().to_string();
            if !ft.spec.on_exit.is_empty() {
                steps.push_str(&format!(" (+{} on exit)", ft.spec.on_exit.len()));
            }
            [
                ft.metadata.name.clone().unwrap_or_default(),
                ft.spec.pool.clone().unwrap_or_else(|| "-".into()),
                if inputs.is_empty() {
                    "-".into()
                } else {
                    inputs.join(", ")
                },
                steps,
                ft.spec.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    super::table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_list_shows_inputs_with_types_required_and_defaults() {
        let fts: Vec<FlowTemplate> = serde_json::from_value(json!([
            {
                "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowTemplate",
                "metadata": {"name": "expense-approval"},
                "spec": {"pool": "examples", "description": "Approve an expense.",
                         "inputs": {"amount": {"type": "number", "required": true},
                                    "currency": {"type": "string", "default": "EUR"},
                                    "note": {"type": "string"}},
                         "steps": [{"name": "a", "sleep": "1s"}, {"name": "b", "sleep": "1s"}],
                         "onExit": [{"name": "c", "sleep": "1s"}]}
            },
            {
                "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowTemplate",
                "metadata": {"name": "tick"},
                "spec": {"steps": [{"name": "a", "sleep": "1s"}]}
            }
        ]))
        .unwrap();
        assert_eq!(
            render_list(&fts),
            "NAME               POOL       INPUTS                                               STEPS            DESCRIPTION\n\
             expense-approval   examples   amount:number*, currency:string=\"EUR\", note:string   2 (+1 on exit)   Approve an expense.\n\
             tick               -          -                                                    1\n"
        );
    }
}

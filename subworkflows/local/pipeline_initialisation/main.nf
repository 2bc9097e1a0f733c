/*
 * Checks the parameters and the samplesheet in plain Groovy, before any process
 * starts (no Nextflow plugin: plugins would be downloaded at run time).
 *
 * Every problem stops the run with one line naming the file (or parameter), the
 * row, the problem and the fix (error(): Nextflow prints "ERROR ~ <message>"); no
 * task is started.
 */

import groovy.json.JsonOutput
import groovy.json.JsonSlurper

// The pipeline's folder, found from this file's folder (moduleDir), so that the scripts of
// tests/nf, whose projectDir is their own folder, read the same files
PIPELINE_DIR = moduleDir.resolve('../../..').normalize()

// The input rules, shared with the Python package (cellassign_nf.rules): sample names, samplesheet
// columns, counts files and folders, marker-file suffixes
RULES = new JsonSlurper().parse(PIPELINE_DIR.resolve('src/cellassign_nf/input_rules.json').toFile())

/*
 * nextflow_schema.json, read once: [groups: name -> group, params: name -> JSON schema, required: names].
 */
def readSchema(String schemaPath) {
    def schemaFile = file(schemaPath)
    if (!schemaFile.exists()) {
        error("nextflow_schema.json not found at ${schemaPath}. Restore it from the pipeline repository.")
    }
    def schema = new JsonSlurper().parse(schemaFile.toFile())
    def groups = (schema['$defs'] ?: schema['definitions'] ?: [:]) as Map
    return [
        groups  : groups,
        params  : groups.values().collectEntries { it['properties'] ?: [:] },
        required: groups.values().collectMany { it['required'] ?: [] }.unique(),
    ]
}

def isInteger(value) {
    return value instanceof Integer || value instanceof Long || value instanceof BigInteger ||
        (value instanceof BigDecimal && value.stripTrailingZeros().scale() <= 0)
}

/*
 * --help: every parameter of nextflow_schema.json, by group.
 */
def helpMessage(String schemaPath) {
    def lines = [
        "cellassign-nf ${workflow.manifest.version}: ${workflow.manifest.description}",
        '',
        'Usage:',
        '  scripts/nextflow run . --input samplesheet.csv --markers markers.csv --outdir results [-profile docker,gpu]',
        '  scripts/nextflow run . -profile test --outdir results',
    ]
    readSchema(schemaPath).groups.each { _name, group ->
        lines << ''
        lines << "${group.title}:"
        (group['properties'] ?: [:]).each { String name, Map spec ->
            if (spec.hidden) {
                return
            }
            def type = spec.type ?: 'string'
            def dflt = spec.containsKey('default') ? " [default: ${spec.default}]" : ''
            def req  = (group.required ?: []).contains(name) ? ' (required)' : ''
            lines << "  --${name.padRight(22)} ${type.padRight(8)} ${spec.description ?: ''}${req}${dflt}"
        }
    }
    lines << ''
    lines << 'Profiles: test, docker, apptainer, singularity, gpu, awsbatch, local_aws, slurm, debug (combine with commas: -profile docker,gpu).'
    lines << 'Details: docs/pipeline.md'
    return lines.join('\n')
}

/*
 * One parameter against its JSON schema: type, choices, range, pattern.
 */
def checkParameter(String name, value, Map s) {
    def types = s.type instanceof List ? s.type : [s.type ?: 'string']
    def ok = types.any { String t ->
        switch (t) {
            case 'integer': return isInteger(value)
            case 'number' : return value instanceof Number
            case 'boolean': return value instanceof Boolean
            case 'string' : return !(value instanceof Boolean)
            case 'null'   : return value == null
            default       : return true
        }
    }
    if (!ok) {
        def wanted = types.collect { it == 'integer' ? 'an integer' : it == 'number' ? 'a number' : it == 'boolean' ? 'true or false' : 'a text' }.join(' or ')
        error("Parameter --${name}: '${value}' is not ${wanted}. Give ${wanted}${types.contains('boolean') ? ' (or just --' + name + ')' : ''}.")
    }
    if (s.enum && !(value.toString() in s.enum*.toString())) {
        error("Parameter --${name}: '${value}' is not one of ${s.enum.join(', ')}. Give one of those.")
    }
    if (value instanceof Number) {
        if (s.minimum != null && value < s.minimum) {
            error("Parameter --${name}: ${value} is below the minimum ${s.minimum}. Give a value >= ${s.minimum}.")
        }
        if (s.maximum != null && value > s.maximum) {
            error("Parameter --${name}: ${value} is above the maximum ${s.maximum}. Give a value <= ${s.maximum}.")
        }
        if (s.exclusiveMinimum != null && value <= s.exclusiveMinimum) {
            error("Parameter --${name}: ${value} must be greater than ${s.exclusiveMinimum}. Give a larger value.")
        }
        if (s.exclusiveMaximum != null && value >= s.exclusiveMaximum) {
            error("Parameter --${name}: ${value} must be less than ${s.exclusiveMaximum}. Give a smaller value.")
        }
    }
    if (s.pattern && value instanceof CharSequence && !(value.toString() ==~ s.pattern)) {
        error("Parameter --${name}: '${value}' does not match ${s.pattern}. ${s.help_text ?: s.description ?: ''}")
    }
}

/*
 * Parameter types, ranges and choices from nextflow_schema.json, plus the rules
 * between parameters. Unknown parameters give a warning (a typo is not fatal).
 */
def validateParameters(Map params, Map schema) {
    def spec = schema.params
    schema.required.each { String name ->
        if (params[name] == null || params[name].toString().trim() == '' || params[name] == true) {
            error("Parameter --${name} is required: ${spec[name]?.description ?: ''} Give it on the command line (--${name} VALUE) or use -profile test.")
        }
    }
    params.each { String name, value ->
        if (spec[name] != null) {
            if (value != null) {
                checkParameter(name, value, spec[name])
            }
            return
        }
        // Nextflow also stores kebab-case params in camelCase: check only the form given
        def snake = name.replaceAll(/([A-Z])/) { '_' + it[0].toLowerCase() }
        if (!spec[snake] && !spec[name.replace('-', '_')]) {
            log.warn "Unknown parameter --${name}: ignored. See --help for the parameters."
        }
    }

    // Rules between parameters
    if (params.covariates && params.design_formula) {
        error("Parameters --covariates and --design_formula were both given. Give one of them: --covariates batch,donor or --design_formula '~ batch + donor'.")
    }
    if (params.covariates) {
        def bad = params.covariates.toString().tokenize(',')*.trim().findAll { !(it ==~ RULES.column_name_pattern) }
        if (bad) {
            error("Parameter --covariates: '${bad[0]}' is not a column name. Give comma-separated obs column names, e.g. --covariates batch,donor.")
        }
    }
    if (params.design_formula && !params.design_formula.toString().trim().startsWith('~')) {
        error("Parameter --design_formula: '${params.design_formula}' is not a formula. Give one that starts with '~', e.g. --design_formula '~ batch + donor'.")
    }
    if (params.model) {
        def model = file(params.model.toString())
        if (!model.exists() || model.isDirectory()) {
            error("Parameter --model: ${model} ${model.exists() ? 'is a folder' : 'does not exist'}. Give a saved model file (the <sample>.model.pt or cohort/cohort.model.pt of an earlier run, or the -o file of `cellassign-nf train`).")
        }
    } else if (!params.markers || params.markers == true) {
        error("Parameter --markers is required (or --model): the marker table, a bundled panel's name, or with --model a saved model whose panel is used. Give it on the command line (--markers VALUE) or use -profile test.")
    }
    // --model without --markers: the model's panel is used (CHECK_MODEL), nothing to check here
    def markers = params.markers ? resolveMarkers(params.markers.toString()) : null
    if (params.markers && markers == null) {
        error("Parameter --markers: file ${file(params.markers.toString())} does not exist and '${params.markers}' is not a bundled panel (${bundledPanels().join(', ') ?: 'none'}). Give the marker table (CSV/TSV genes x types, YAML/JSON {type: [genes]}, .txt type:gene,gene lines) or a bundled panel's name.")
    }
    if (markers?.isDirectory()) {
        error("Parameter --markers: ${markers} is a folder. Give the marker table file (CSV/TSV genes x types, or YAML/JSON {type: [genes]}).")
    }
    if (!params.skip_multiqc && params.multiqc_config && !file(params.multiqc_config.toString()).exists()) {
        error("Parameter --multiqc_config: file ${params.multiqc_config} does not exist. Give a MultiQC config file or leave the parameter out.")
    }
    if (workflow.profile.tokenize(',').contains('awsbatch')) {
        if (!workflow.workDir.toUriString().startsWith('s3://')) {
            error("Profile awsbatch: the work directory ${workflow.workDir} is not on S3. Give -work-dir s3://BUCKET/work (or -bucket-dir s3://BUCKET/work).")
        }
        if (!params.outdir.toString().startsWith('s3://')) {
            log.warn "Profile awsbatch: --outdir ${params.outdir} is not on S3; results are copied to the machine running Nextflow."
        }
    }
}

/*
 * --markers: a file, or the name of a bundled panel (assets/markers/NAME.txt, ...); null if neither.
 */
def resolveMarkers(String value) {
    def given = file(value)
    if (given.exists()) {
        return given
    }
    if (value ==~ /[A-Za-z0-9_.-]+/) {
        def bundled = RULES.marker_file_suffixes.collect { PIPELINE_DIR.resolve("assets/markers/${value}${it}") }.find { it.exists() }
        if (bundled) {
            return bundled.toRealPath()  // assets/markers is a link into src/: stage the file itself
        }
    }
    return null
}

def bundledPanels() {
    def dir = PIPELINE_DIR.resolve('assets/markers').toFile().canonicalFile  // a link into src/cellassign_nf/panels
    def names = dir.isDirectory() ? (dir.list() as List) : []
    return names.findAll { String n -> RULES.marker_file_suffixes.any { n.endsWith(it) } }.collect { String n -> n.take(n.lastIndexOf('.')) }.sort()
}

def isMatrixFolder(folder) {
    return folder.isDirectory() && RULES.matrix_files.any { folder.resolve(it).exists() }
}

/*
 * A counts folder from the samplesheet -> the file (or matrix folder) to read: the folder itself
 * when it holds matrix.mtx(.gz), else the filtered matrix of a Cell Ranger (run folder, outs/),
 * Cell Ranger multi or STARsolo output folder. The choice is logged; no match stops the run.
 */
def resolveCountsFolder(counts, String at, String sample, String countsText) {
    if (!counts.isDirectory() || isMatrixFolder(counts)) {
        return counts
    }
    for (String rel : RULES.counts_in_folder) {
        def cand = counts.resolve(rel)
        if (rel.endsWith('.h5') ? (cand.exists() && !cand.isDirectory()) : isMatrixFolder(cand)) {
            log.info "Sample '${sample}': counts folder ${counts} is Cell Ranger/STARsolo output; using ${cand}"
            return cand
        }
    }
    def multi = file("${counts}/${RULES.counts_multi_glob}", type: 'file') as List
    if (multi.size() == 1) {
        log.info "Sample '${sample}': counts folder ${counts} is Cell Ranger multi output; using ${multi[0]}"
        return multi[0]
    }
    def why = multi ? "Cell Ranger multi output with ${multi.size()} samples" : 'no matrix.mtx(.gz) and no Cell Ranger/STARsolo filtered matrix'
    error("${at}: counts folder '${countsText}' of sample '${sample}' holds ${why} (looked for matrix.mtx(.gz), outs/filtered_feature_bc_matrix(.h5), Solo.out/Gene/filtered). Point to the sample's Cell Ranger outs/ folder, its filtered_feature_bc_matrix folder or .h5 file, or an .h5ad file.")
}

/*
 * Split one CSV/TSV line; double quotes may wrap a field ("" is a quote inside one).
 */
def splitLine(String line, String sep) {
    def fields = []
    def cur = new StringBuilder()
    boolean quoted = false
    for (int i = 0; i < line.length(); i++) {
        if (line[i] == '"') {
            if (quoted && line.startsWith('"', i + 1)) {
                cur << '"'
                i++
            } else {
                quoted = !quoted
            }
        } else if (!quoted && line.startsWith(sep, i)) {
            fields << cur.toString().trim()
            cur.setLength(0)
        } else {
            cur << line[i]
        }
    }
    fields << cur.toString().trim()
    return fields
}

/*
 * A sample name that matches the rules' pattern, made from one that does not: each character that
 * cannot follow the kept ones becomes '_' (or is dropped where '_' cannot stand either).
 */
def suggestSampleName(String name) {
    def kept = ''
    name.each { String ch ->
        if ("${kept}${ch}" ==~ RULES.sample_name_pattern) {
            kept += ch
        } else if (kept && "${kept}_" ==~ RULES.sample_name_pattern) {
            kept += '_'
        }
    }
    return kept ?: 'sample1'
}

/*
 * Read and check the samplesheet: columns `sample,counts[,covariate columns...]`.
 * Returns [[id: sample, <covariate>: value, ...], countsPath] for every row.
 */
def readSamplesheet(String input) {
    def sheet = file(input)
    def where = "Samplesheet ${sheet}"
    def required = RULES.samplesheet_required_columns
    def columns = "${required.join(',')}[,metadata...]"
    if (!sheet.exists()) {
        error("${where}: file does not exist. Give the path of a CSV with columns ${columns} to --input.")
    }
    if (sheet.isDirectory()) {
        error("${where}: is a folder. Give the path of a CSV file with columns ${columns} to --input.")
    }
    def sep = sheet.name.toLowerCase().endsWith('.tsv') ? '\t' : ','
    def lines = sheet.readLines()
    if (lines && lines[0].startsWith('\uFEFF')) {
        lines[0] = lines[0].substring(1)
    }
    // [line number, text] of the lines that are not empty and not comments
    def numbered = lines.withIndex(1).findAll { String text, int _n -> text.trim() && !text.trim().startsWith('#') }
        .collect { String text, int n -> [n, text] }
    if (!numbered) {
        error("${where}: the file is empty. Write a header line '${required.join(',')}' and one line per sample.")
    }
    def headerLine = numbered[0][0]
    def header = splitLine(numbered[0][1], sep)
    header.eachWithIndex { String name, int idx ->
        if (!name) {
            error("${where}, line ${headerLine}: column ${idx + 1} of the header has no name. Name it, or remove the empty column (e.g. a trailing '${sep == ',' ? ',' : 'tab'}').")
        }
        if (!(name ==~ RULES.column_name_pattern)) {
            error("${where}, line ${headerLine}: unknown column '${name}'. Column names are ${required.collect { "'${it}'" }.join(', ')} and covariate names made of letters, digits, '_' and '.'.")
        }
        if (header.count(name) > 1) {
            error("${where}, line ${headerLine}: column '${name}' appears twice. Keep one column of each name.")
        }
    }
    required.each { String name ->
        if (!header.contains(name)) {
            error("${where}, line ${headerLine}: missing column '${name}' (header is '${header.join(sep)}'). The header must have the columns ${columns}.")
        }
    }
    if (numbered.size() < 2) {
        error("${where}: no samples, only the header line. Add one line per sample: name,path-to-counts.")
    }
    def seen = [:]
    return numbered.drop(1).collect { int lineNo, String text ->
        def row = readRow(splitLine(text, sep), header, "${where}, line ${lineNo}", seen)
        seen[row.sample] = lineNo
        def meta = [id: row.sample]
        header.findAll { !(it in required) }.each { String col -> meta[col] = row[col] }
        return [meta, countsPath(row.counts, sheet, "${where}, line ${lineNo}", row.sample)]
    }
}

/*
 * One samplesheet row: column -> value, after the checks of its values and of its sample name
 * (seen: the names of the rows above -> their line numbers).
 */
def readRow(List fields, List header, String at, Map seen) {
    if (fields.size() > header.size()) {
        error("${at}: ${fields.size()} values for ${header.size()} columns (unknown column ${header.size() + 1}, value '${fields[header.size()]}'). Remove the extra value or name its column in the header.")
    }
    if (fields.size() < header.size()) {
        error("${at}: ${fields.size()} values for ${header.size()} columns (missing column '${header[fields.size()]}'). Give one value per header column.")
    }
    def row = [header, fields].transpose().collectEntries { it }
    def sample = row.sample
    if (!sample) {
        error("${at}: the sample name is empty. Give every row a sample name.")
    }
    if (!(sample ==~ RULES.sample_name_pattern)) {
        error("${at}: sample name '${sample}' has characters other than ${RULES.sample_name_characters} (or starts with one of the last three). Rename the sample, e.g. '${suggestSampleName(sample)}'.")
    }
    if (sample.toLowerCase() in RULES.reserved_sample_names) {
        error("${at}: sample name '${sample}' is reserved for an output folder (${RULES.reserved_sample_names.join(', ')}). Rename the sample.")
    }
    if (seen.containsKey(sample)) {
        error("${at}: duplicate sample '${sample}' (also on line ${seen[sample]}). Give every sample a unique name, or merge the two rows.")
    }
    return row
}

/*
 * A row's counts path (relative to the samplesheet's folder, or absolute or a URL), checked and,
 * for a counts folder, resolved to the matrix in it.
 */
def countsPath(String countsText, sheet, String at, String sample) {
    if (!countsText) {
        error("${at}: the counts path of sample '${sample}' is empty. Give the path of its h5ad, 10x .h5 file or 10x matrix folder.")
    }
    def counts = (countsText ==~ /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/.*/ || countsText.startsWith('/')) ?
        file(countsText) : file(sheet.parent.resolve(countsText).normalize().toString())
    if (!counts.exists()) {
        error("${at}: counts file '${countsText}' of sample '${sample}' does not exist (looked for ${counts}). Fix the path; relative paths are read from the samplesheet's folder ${sheet.parent}.")
    }
    if (!counts.isDirectory() && !RULES.counts_file_extensions.any { counts.name.toLowerCase().endsWith(it) }) {
        error("${at}: counts file '${countsText}' of sample '${sample}' is not an .h5ad, a 10x .h5 file or a 10x matrix folder. Convert it to .h5ad or give the 10x output.")
    }
    return resolveCountsFolder(counts, at, sample, countsText)
}

/*
 * Containers: every image the tasks will use must be there before the first task starts.
 * docker: present locally, or pullable; apptainer / singularity: a .sif that exists, or a
 * name they can pull (a bare local Docker name like cellassign-nf:0.1.0 is not one).
 * Otherwise one line: the image and the command that builds it.
 */
CONTAINER_BUILD_COMMAND = 'scripts/build-images'

// [exit status, the last non-empty line the command wrote to stdout or stderr]. One pipe for both
// streams, read by one thread that is joined before the text is used (two threads appending to one
// buffer can corrupt it, and reading it before they finish can lose its last lines).
def runCommand(List<String> command, long timeoutMs) {
    def out = new StringBuilder()
    def proc
    try {
        proc = new ProcessBuilder(command).redirectErrorStream(true).start()
    } catch (IOException e) {
        return [127, "${command[0]}: command not found"]
    }
    def reader = proc.consumeProcessOutputStream(out)
    proc.waitForOrKill(timeoutMs)
    reader.join(timeoutMs)
    return [proc.exitValue(), out.toString().trim().readLines().findAll { it.trim() }.with { it ? it[-1] : '' }]
}

def containerImages() {
    def images = workflow.container instanceof Map ? workflow.container.values() : [workflow.container]
    return images.findAll { it }*.toString().unique()
}

def isLocalDockerName(String image) {
    // no registry, no user: docker.io/library/<name>, where this pipeline's image is never published
    return !image.contains('://') && !image.contains('/')
}

def checkContainerImages() {
    def engine = workflow.containerEngine
    def images = containerImages()
    if (engine == 'docker') {
        def (int rc, String why) = runCommand(['docker', 'version', '--format', '{{.Server.Version}}'], 60_000)
        if (rc != 0) {
            error("Profile docker: the Docker daemon does not answer (${why}). Start it (systemctl start docker, or dockerd as root) and run again.")
        }
        images.each { image ->
            if (runCommand(['docker', 'image', 'inspect', image], 60_000)[0] == 0) {
                return
            }
            def (int pullRc, String pullWhy) = runCommand(['docker', 'pull', '-q', image], 1_800_000)
            if (pullRc != 0) {
                error("Container image ${image} is not here and docker cannot pull it (${pullWhy}). Build it with: ${CONTAINER_BUILD_COMMAND} (or give --container_image with an image you have).")
            }
        }
    } else if (engine in ['apptainer', 'singularity']) {
        images.each { image ->
            def local = image.startsWith('/') || image.startsWith('./') || image.endsWith('.sif') || image.endsWith('.img')
            if (local && !file(image).exists()) {
                error("Container image ${image} (${engine}) does not exist. Build it with: ${CONTAINER_BUILD_COMMAND} && ${engine} build ${file(image).name} docker-daemon://cellassign-nf:${workflow.manifest.version}, then give --container_image /path/to/${file(image).name}.")
            }
            if (!local && isLocalDockerName(image)) {
                error("Container image ${image} is a local Docker name that ${engine} cannot pull. Build the .sif with: ${CONTAINER_BUILD_COMMAND} && ${engine} build cellassign-nf_${workflow.manifest.version}.sif docker-daemon://${image}, then give --container_image /path/to/cellassign-nf_${workflow.manifest.version}.sif.")
            }
        }
    }
}

/*
 * The parameters shown in every report (those that change the results), as JSON.
 */
def reportParameters(Map params, Map schema, markersFile) {
    // the model's layout and every parameter passed to a step (its schema "step")
    def keys = (schema.groups['model_options']['properties'].keySet() as List) +
        schema.params.findAll { it.value['step'] }.keySet()
    def out = [pipeline: 'cellassign-nf', pipeline_version: workflow.manifest.version?.toString(), markers: markersFile?.name ?: "the model's panel",
               model: params.model ? file(params.model.toString()).name : null]
    keys.each { k -> out[k] = params[k] instanceof Number || params[k] instanceof Boolean || params[k] == null ? params[k] : params[k].toString() }
    return JsonOutput.toJson(out)
}

workflow PIPELINE_INITIALISATION {
    take:
    input       // string: --input
    markers     // string: --markers

    main:
    def schema = readSchema("${projectDir}/nextflow_schema.json")
    if (params.validate_params != false) {
        validateParameters(params, schema)
    }
    def rows = readSamplesheet(input.toString())
    checkContainerImages()
    log.info "cellassign-nf ${workflow.manifest.version}: ${rows.size()} sample(s) [${rows.collect { it[0].id }.join(', ')}], mode ${params.mode}, outdir ${params.outdir}"
    def markersFile = markers ? (resolveMarkers(markers.toString()) ?: file(markers.toString())) : null
    if (markersFile && markersFile.toString() != file(markers.toString()).toString()) {
        log.info "Markers: bundled panel '${markers}' (${markersFile})"
    }
    if (params.model) {
        log.info "Model: ${params.model} (--refit ${params.refit}); no model is trained"
    }

    emit:
    samples     = Channel.fromList(rows)                               // [meta, counts]
    markers     = Channel.value(markersFile ?: [])                     // path, or [] (--model without --markers)
    model       = Channel.value(params.model ? file(params.model.toString()) : [])  // path, or [] (no --model)
    params_json = Channel.value(reportParameters(params, schema, markersFile)) // JSON text for the reports
}
